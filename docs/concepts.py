"""The figures of the Concepts page: DFF and CRAFT on the shipped demo data.

    python docs/concepts.py          # writes docs/concepts/dff.png and docs/concepts/craft.png

The same calls as the page's examples (docs/concepts.md), on generated data and the shipped weights,
so the figures are deterministic: they are committed and rebuilt when the concept methods change.
"""

from __future__ import annotations

from pathlib import Path

import keras_cam
from keras_cam.demo import CLASS_NAMES, TARGET_LAYER, load_model, make_dataset

OUT = Path(__file__).resolve().parent / "concepts"


def main():
    OUT.mkdir(exist_ok=True)
    model = load_model()
    images, labels, _ = make_dataset(32, seed=1)
    concepts = keras_cam.DeepFeatureFactorization(model, layer=TARGET_LAYER, k=4)(images)
    concepts.plot(images, class_names=CLASS_NAMES, n_images=6, path=OUT / "dff.png")
    craft = keras_cam.CRAFT(model, layer=TARGET_LAYER, k=4, crop_size=32, n_designs=16)
    found = craft.fit(images[labels == 0], target=0)
    found.plot(n_concepts=3, n_crops=6, class_names=CLASS_NAMES, path=OUT / "craft.png")
    print(f"wrote {OUT / 'dff.png'} and {OUT / 'craft.png'}")


if __name__ == "__main__":
    main()
