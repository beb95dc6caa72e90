"""Synthetic affect videos in the exact Aff-Wild2 layout: the dataset behind `mambava demo` and many tests.

Aff-Wild2 and pretrained MAE weights cannot be had offline, so this package renders its own face videos whose
expressions follow ground-truth valence/arousal (VA) trajectories, and writes them exactly as the ABAW release
lays Aff-Wild2 out, so that every loader of the real pipeline is exercised:

    OUT/
      videos/batch1/<v>.mp4, videos/batch2/<v>.mp4        raw videos (H.264, yuv420p, 30 fps; AAC voices)
      cropped_aligned/<v>/<NNNNN>.jpg                      112x112 crops aligned to the ArcFace 5-point template,
                                                           1-based frame numbers, missing where no face was found
      cropped_aligned/<v>_left/, <v>_right/                two-person videos: one crop folder per person
      VA_Estimation_Challenge/Train_Set/<v>.txt           "valence,arousal" then one line per video frame,
      VA_Estimation_Challenge/Validation_Set/<v>.txt      -5,-5 where a frame has no valid annotation
      Valence_Arousal_Estimation_Challenge_test_set_release.txt   the test-set list (annotation names)
      synth_ground_truth/Test_Set/<v>.txt                  test labels (ABAW keeps these private; we can score)
      synth_meta.json, synth_meta/<v>.npz                  the config, per-video facts, and per-frame truth
                                                           (un-lagged VA, rendered expression parameters, the
                                                           true 5 landmarks and those each crop was aligned with)

    summary = generate("data", SynthConfig(n_train=16, seed=0))    # the videos
    generate_stills("stills", StillsConfig())                     # an AffectNet-like still set for pretraining
    truth = read_truth("data", summary.splits["test"][0])          # per-frame truth of one annotation name
    oracle_scores(simulate(SynthConfig()))                         # what the rendered signals allow

The modules, one concern each (every number is drawn per video or person from the seed):

- `signals`: smoothed noise, episodes, Poisson events; the true VA trajectories (mood, slow drifts, episodes).
- `identity`: a person's appearance (face shape, skin, hair, eyes, glasses, beard, clothes, size).
- `expression`: per-frame parameters of one person (`Track`): expression from VA (arousal mostly visible over
  several frames: blinks, talking amplitude, head motion), the rater's lagged, smoothed labels with -5 runs,
  no-face gaps and occluders.
- `render`: drawing a face with one frame's expression, compositing, occluders; the aligned crop.
- `dataset`: which videos (`plan`), rendering and writing one video (`render_video`), `generate`.
- `layout`: the folder and file names, atomic writers, and the readers (`read_meta`, `read_truth`, ...).
- `stills`: `StillsConfig`, `generate_stills`.
- `oracle`: `simulate` (the truth without rendering) and `oracle_scores` (frame-wise vs. with context).
- `voice`: each person's voice (glottal pulses, formants, syllables, turns, room), the videos' AAC track, and
  `voice` in the truth (the frames where the person is heard).

Determinism: everything derives from `SynthConfig.seed` through one numpy SeedSequence child per video, so
the same config gives byte-identical annotation files, crops and metadata whatever the number of workers.
(The H.264 stream is produced by libx264 and is not part of that promise.) Every file is written atomically
(temporary name + rename); each crop folder is filled under a temporary name and renamed when complete.
"""

from mambava.synth.config import ProgressFn, SynthConfig, SynthSummary
from mambava.synth.dataset import generate
from mambava.synth.expression import RENDERED_TRUTH
from mambava.synth.identity import Identity
from mambava.synth.layout import (
    ANNOTATION_DIR,
    CROPS_DIR,
    FORMAT_VERSION,
    GROUND_TRUTH_DIR,
    META_DIR,
    META_FILE,
    SPLIT_DIRS,
    TEST_LIST_NAME,
    VIDEOS_DIR,
    ground_truth_path,
    read_labels,
    read_meta,
    read_truth,
)
from mambava.synth.oracle import oracle_scores, simulate
from mambava.synth.render import ARCFACE_TEMPLATE_112, similarity
from mambava.synth.stills import StillsConfig, generate_stills

# the name this transform had when the generator was one module (tests and scripts import it)
_similarity = similarity

__all__ = [
    "ANNOTATION_DIR",
    "ARCFACE_TEMPLATE_112",
    "CROPS_DIR",
    "FORMAT_VERSION",
    "GROUND_TRUTH_DIR",
    "META_DIR",
    "META_FILE",
    "RENDERED_TRUTH",
    "SPLIT_DIRS",
    "TEST_LIST_NAME",
    "VIDEOS_DIR",
    "Identity",
    "ProgressFn",
    "StillsConfig",
    "SynthConfig",
    "SynthSummary",
    "generate",
    "generate_stills",
    "ground_truth_path",
    "oracle_scores",
    "read_labels",
    "read_meta",
    "read_truth",
    "similarity",
    "simulate",
]
