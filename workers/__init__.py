"""Pipeline steps as plain functions (score, analyse, search, baselines, finalize) and their runners."""
