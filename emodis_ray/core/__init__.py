"""The model, the training methods, the epoch loop, checkpoints and scores. No Ray: everything here runs in a
plain Python process."""
