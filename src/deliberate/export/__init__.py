"""Training data from the trees: preference pairs, labelled completions, trajectories, critiques, step labels."""
