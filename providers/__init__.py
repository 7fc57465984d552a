"""Supply sources behind one Protocol; SDKs are imported lazily through the registry."""
