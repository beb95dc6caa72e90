"""Frames and sound out of files, cameras, URLs and image folders: `video` (frames with their numbers and
presentation times, PyAV and OpenCV) and `audio` (a video's sound as 16 kHz mono on the same clock).

The first stage of the pipeline: faces and audio features read their input from here.
"""
