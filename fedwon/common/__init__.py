"""The bottom layer: record names, configuration sections and one-line errors, shared by all."""
