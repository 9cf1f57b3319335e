"""`vpp synth`: synthetic YouTube-VIS datasets with exact ground truth (tests, training the
bundled model, demos, benchmarks).

    from vppcli.synth import SynthConfig, generate
    summary = generate(Path("data/synth"), [SynthConfig(videos=300, split="train"),
                                            SynthConfig(videos=50, split="valid")], workers=2)
"""

from vppcli.synth.config import GENERATOR_VERSION, SPLIT_CODES, SynthConfig
from vppcli.synth.dataset import ANNOTATION_FILE, SplitSummary, SynthSummary, generate, video_name
from vppcli.synth.shapes import CATEGORIES

__all__ = [
    "ANNOTATION_FILE",
    "CATEGORIES",
    "GENERATOR_VERSION",
    "SPLIT_CODES",
    "SplitSummary",
    "SynthConfig",
    "SynthSummary",
    "generate",
    "video_name",
]
