"""Datasets and the files between stages: the Aff-Wild2 / ABAW release (`affwild2`, `check`), crop sources
(`crops`), folds (`folds`), the feature store (`store`), time bases (`timebase`), training and inference
windows (`windows`) and the challenge submission (`submission`)."""
