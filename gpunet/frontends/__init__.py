"""What a user touches: the command line, the scikit-learn estimator, plots, images and the drawing page."""
