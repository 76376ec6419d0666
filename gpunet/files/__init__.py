"""Reading digits (CSV, IDX, npz, the bundled sample), model files, and writing files safely."""
