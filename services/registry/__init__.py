"""RegistryService: which sessions are open on which node, and presence."""
