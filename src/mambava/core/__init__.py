"""Plumbing every room uses: one error type (`errors`), atomic output (`fileio`), progress lines (`progress`),
device and thread policy (`runtime`), CCC and its loss (`metrics`), learning-rate schedules (`schedule`), typed
configs on OmegaConf (`config`) and the one safetensors checkpoint format (`checkpoint`).

Nothing here imports another room of mambava.
"""
