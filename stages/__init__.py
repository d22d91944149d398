"""One entry point per stage; each reads the config and calls the library."""
