"""The data pipeline: files → records → examples → token ids with loss targets → (packed) batches.

`build_datasets` takes the values of the config's `data:` section and returns the training and
validation `Dataset`s; `DataLoader` turns one into shuffled, resumable batches of int64 tensors with
labels already aligned to positions (as `aprender.loss.chunked_causal_lm_loss` expects).

Modules: `sources` (paths, JSONL/JSON/Parquet/text readers), `formats` (schema detection and
normalisation), `encode` (chat templates, label masking, BOS/EOS, truncation), `packing` (first-fit
decreasing rows with per-sample positions), `dataset` (the chain and the validation split), `loader`
(shuffling, collation, resume).
"""

from entrenar.data.dataset import Dataset, DataStats, build_datasets, load_examples, pad_token_id, split_samples
from entrenar.data.encode import IGNORE_INDEX, TRAIN_ON, EncodedSample, Encoder, TrainOn
from entrenar.data.formats import FORMATS, Example, FormatName, detect_format, normalize_record
from entrenar.data.loader import DataLoader, collate_packed, collate_padded
from entrenar.data.packing import PAD_SEQ_ID, pack_first_fit_decreasing, pack_row
from entrenar.data.sources import Location, RawRecord, read_records, resolve_data_files

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "PAD_SEQ_ID",
    "TRAIN_ON",
    "DataLoader",
    "DataStats",
    "Dataset",
    "EncodedSample",
    "Encoder",
    "Example",
    "FormatName",
    "Location",
    "RawRecord",
    "TrainOn",
    "build_datasets",
    "collate_packed",
    "collate_padded",
    "detect_format",
    "load_examples",
    "normalize_record",
    "pack_first_fit_decreasing",
    "pack_row",
    "pad_token_id",
    "read_records",
    "resolve_data_files",
    "split_samples",
]
