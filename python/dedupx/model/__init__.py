"""The data model every stage shares: the Frames a capture becomes, and the one definition
each of page classes, coverage, process kinds and units."""
