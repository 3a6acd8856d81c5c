"""`relic play`: the world model in a browser, steered with the keyboard (server.py)."""
