"""From a trained model to predictions: offline (`predict`: video -> faces -> features -> temporal model ->
one row per frame and track), live (`stream`: frame by frame with the recurrent state), the files they read
and write (`files`) and local model names (`catalog`)."""
