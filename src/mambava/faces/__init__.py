"""Faces from frames, offline: detection with 5 landmarks (MTCNN, facenet-pytorch's weights shipped in the package;
or OpenCV's Haar cascade), ArcFace-template alignment to 112×112, multi-face tracking, and the Aff-Wild2
`cropped_aligned` writer.

    from mambava.faces import detect_faces, align_face, iter_tracked_faces, extract_faces
    faces = detect_faces(rgb_image)                       # [Face(box, landmarks (5, 2), score)]
    crop = align_face(rgb_image, faces[0].landmarks)      # (112, 112, 3) uint8
    for ff in iter_tracked_faces(open_video("clip.mp4")):  # streaming: FrameFaces(index, time, faces)
        ...
    result = extract_faces("clip.mp4", "cropped_aligned")  # crops + CSV; per-track present/missing frames
"""

from mambava.faces.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    crop_box,
    face_crop,
    similarity_transform,
    template,
    transform_points,
)
from mambava.faces.detect import (
    BaseDetector,
    Face,
    FaceDetector,
    HaarDetector,
    MTCNNDetector,
    available_detectors,
    detect_faces,
    get_detector,
    nms,
    register_detector,
)
from mambava.faces.dlib_models import LANDMARK68_COLUMNS, Dlib68Detector
from mambava.faces.pipeline import (
    CSV_COLUMNS,
    FacesResult,
    FrameFaces,
    TrackedFace,
    TrackResult,
    contact_sheet,
    extract_faces,
    iter_tracked_faces,
)
from mambava.faces.pose import POSE_COLUMNS, head_pose
from mambava.faces.track import FaceTracker, FinishedTrack, finish_tracks, iou, name_tracks, stitch_tracks

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "align_face",
    "alignment_matrix",
    "crop_box",
    "face_crop",
    "similarity_transform",
    "template",
    "transform_points",
    "BaseDetector",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "MTCNNDetector",
    "available_detectors",
    "detect_faces",
    "get_detector",
    "nms",
    "register_detector",
    "LANDMARK68_COLUMNS",
    "Dlib68Detector",
    "POSE_COLUMNS",
    "head_pose",
    "CSV_COLUMNS",
    "FacesResult",
    "FrameFaces",
    "TrackedFace",
    "TrackResult",
    "contact_sheet",
    "extract_faces",
    "iter_tracked_faces",
    "FaceTracker",
    "FinishedTrack",
    "finish_tracks",
    "iou",
    "name_tracks",
    "stitch_tracks",
]
