"""The training loop and the scores it is judged by."""
