"""The network: its layers (each forward rule beside its backward rule), activations, loss and optimizers."""
