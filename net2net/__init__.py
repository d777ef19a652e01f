"""net2net."""
