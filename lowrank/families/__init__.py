"""The analysis families, one folder each, named after its command."""
