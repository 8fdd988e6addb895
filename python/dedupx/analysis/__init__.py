"""Analyses: each takes a capture's Frames (dedupx.model.frames) and returns numbers, never text."""
