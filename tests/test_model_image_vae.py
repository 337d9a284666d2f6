"""The image VAE against the shared model contract, plus what is particular to it."""

from __future__ import annotations

from typing import ClassVar

from model_contract import CPU, ImageContract

from genai_pipeline.models.image_vae import ImageVAE, ImageVAEConfig  # registers the model

PARAMS: dict = {"channels": 8, "latent_dim": 4, "label_dim": 4}


class TestImageVAE(ImageContract):
    family = "vae"
    params: ClassVar[dict] = PARAMS

    def test_temperature_scales_the_variety(self, fitted: ImageVAE) -> None:
        """A colder prior gives samples of one label that differ less from each other."""
        cold = ImageVAE(ImageVAEConfig(**PARAMS, temperature=0.05), device=CPU)
        cold.restore(fitted.fitted_state())
        cold.decoder.load_state_dict(fitted.decoder.state_dict())

        def spread(model: ImageVAE) -> float:
            (batch,) = model.sample(50, conditions={"label": "3"}, seed=0, batch_size=50)
            return float(batch.images.astype(float).std(axis=0).mean())

        assert spread(cold) < spread(fitted) / 2
