"""Commands of the later stages; each module defines register(sub, ...)."""
