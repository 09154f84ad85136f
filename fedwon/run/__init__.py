"""Running one simulation or deployment: its directory, lock, checkpoint, recorder and checks."""
