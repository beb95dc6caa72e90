"""Tables of predictions, read: per-track summaries and event aggregates (`summaries`), continuous ratings on
a video's frames and a rater's lag (`ratings`), and the figures (`plots`)."""
