"""Analyses: each takes a capture's Frames (dedupx.frames) and returns numbers, never text."""
