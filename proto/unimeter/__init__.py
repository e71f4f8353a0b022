"""Unimeter public API, generated from the .proto files beside this package (make proto)."""
