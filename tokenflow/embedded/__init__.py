"""The embedded default model: its procedural world, its training recipe and (as package data
beside this file) its weights."""
