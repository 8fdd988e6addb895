"""What dedupx says: reports as plain dicts (what --json prints) and their terminal form."""
