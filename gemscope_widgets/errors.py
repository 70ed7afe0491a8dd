"""Every failure a user can cause raises a subclass of :class:`GemscopeError`.

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


class GemscopeError(ValueError):
    """Base class for user-facing errors.

    In IPython and Jupyter these show as one line, ``ErrorName: message``, rather than a traceback through the
    library: the message already says what was wrong and what to do. Set ``GEMSCOPE_TRACEBACKS=1`` for the
    full traceback (IPython's ``_render_traceback_`` protocol; plain Python always prints it in full).
    """

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        # IPython looks this up with hasattr(): without it (GEMSCOPE_TRACEBACKS=1) it prints its usual traceback.
        if os.environ.get("GEMSCOPE_TRACEBACKS", "").strip() not in ("", "0"):
            raise AttributeError("_render_traceback_")
        return lambda: [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def warn_user(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the caller's own code: the first frame outside this package (a notebook
    cell, a script), so the warning names the user's line rather than a line of the library. The same as
    Python 3.12's ``skip_file_prefixes``, which Python 3.10 and 3.11 lack."""
    level = 2  # 1 is this function, 2 its caller
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


class UnsupportedDtypeError(GemscopeError):
    """A dtype Gemma 3 cannot run in (fp16) or one we do not know."""


class ModelLoadError(GemscopeError):
    """The model could not be found or loaded."""


class SAELoadError(GemscopeError):
    """The SAE files are missing, malformed or not in the Gemma Scope 2 layout."""


class SAEModelMismatch(GemscopeError):
    """The SAE was trained for another model, width, layer or site."""


class DevicePlacementError(GemscopeError):
    """An SAE and the model run on different kinds of device where that would copy activations every step."""


class PromptError(GemscopeError):
    """The prompt is empty, too long or malformed."""


class FeatureIndexError(GemscopeError, IndexError):
    """A feature index outside the SAE's width."""


class SteeringError(GemscopeError):
    """A steering request with a bad strength, mode or position."""


class StatsCacheError(GemscopeError):
    """A feature statistics cache that is corrupted or belongs to another model/SAE/corpus."""


class TrainingError(GemscopeError):
    """Bad arguments to ``train_sae`` / ``fit_jumprelu``, or too little text to train on."""


class DirectionError(GemscopeError):
    """A behaviour direction asked for with unusable prompt sets, a layer out of range or a bad position."""


class ContrastError(GemscopeError):
    """A contrast asked for with a span the prompt does not have, an unknown reduction, or too few pairs."""


class FaithfulnessError(GemscopeError):
    """A chain-of-thought test asked for with missing pieces (no answers, empty reasoning, a bad corruption)."""


class GraphError(GemscopeError):
    """A malformed attribution graph, a bad node reference or an unreadable graph file."""


class JobCancelled(GemscopeError):
    """A background job stopped because it was cancelled (``cancel()``, or a newer job for the same thing);
    raised inside the job at its next check and by ``Job.wait``. Start the job again to redo the work."""


class ProbeError(GemscopeError):
    """A probe asked for with unusable prompt sets (unequal, too small to split), a bad position or bad settings."""


class CausalCheckError(GemscopeError):
    """A causal check with nothing to intervene on, a bad scorer (one that fails or returns no number) or prompts."""


class EntityError(GemscopeError):
    """An entity-knowledge scan with a malformed entity record, an entity whose last token cannot be located, or a
    set where known and unknown entities do not both occur."""


class MatryoshkaError(GemscopeError):
    """A coarse-to-fine question asked badly: prefix sizes that do not increase or exceed the width, a latent
    family asked of statistics for another dictionary, or two dictionaries of different sites or models."""


class NeuronpediaImportError(GemscopeError):
    """A Neuronpedia export file that cannot be read or does not match the SAE."""


class ExamplesFormatError(GemscopeError):
    """An ``examples.safetensors`` whose keys or shapes do not match the Gemma Scope 2 layout."""


class AttributionError(GemscopeError):
    """Bad arguments to ``attribute`` (a non-positive batch size, a bad logit probability, ...)."""


class AttributionMemoryError(AttributionError):
    """``attribute`` would need more memory than is available; the message names settings that fit."""


class TranscoderSetError(SAELoadError):
    """A transcoder set that cannot be built: wrong kind, duplicate layers, mixed widths, missing folders."""


class ReplacementError(GemscopeError):
    """The model could not be frozen into a linear replacement (an unexpected architecture or dtype)."""


class ViewMessageError(GemscopeError):
    """A message from the view that the widget does not understand (a front end of another version)."""


class CircuitError(GemscopeError):
    """A bad argument to the circuit view (threshold, node reference, intervention, payload size)."""


class LabelScoreError(GemscopeError):
    """Label scores asked badly: no held-out text, an unknown sort key, a feature with too few activating
    held-out tokens to score."""


class SearchError(GemscopeError):
    """A feature search asked badly: an empty query, no example texts, or texts that are not strings."""


class ExplainError(GemscopeError):
    """Explanations asked badly: no features, a model that is not a Gemma 3 causal LM as explainer or scorer,
    bad sampling settings, or no statistics to take top-activating examples from."""
