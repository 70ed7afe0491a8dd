"""The one progress bar of long work: ``tqdm.auto``, leaving a true line behind in a saved notebook.

In a Jupyter kernel ``tqdm.auto`` draws an ipywidgets bar whose output also carries a plain-text copy of the bar
*as it was first drawn* ("0%| | 0/4096"). A notebook saved without widget state shows that copy for ever, as if the
work had stalled at zero. :func:`progress_bar` draws the same bar under a display id and, when it closes, replaces
the whole output with one plain-text line of how it ended: the finished count and time, "stopped at n of total"
after an error or an interrupt, or nothing at all for a bar made with ``leave=False``. Outside a kernel it is plain
tqdm.

``tqdm.auto`` is imported on the first bar, not with this module: in a kernel it loads ipywidgets, and importing
the backend loads no widget library (tests/test_layering.py).
"""

from __future__ import annotations

import functools
from typing import Any

from tqdm import tqdm


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm.auto.tqdm(*args, **kwargs)``; in a notebook the bar's output ends as a line of how it ended.

    Source: tqdm (``tqdm.auto``, ``tqdm.notebook``); the replacement uses IPython's
    ``display(..., display_id=True)`` handles.
    """
    return _bar_class()(*args, **kwargs)


@functools.cache
def _bar_class() -> type[tqdm]:
    from tqdm.auto import tqdm as auto_tqdm  # loads ipywidgets in a kernel: only on a bar

    try:
        from tqdm.notebook import tqdm_notebook
    except ImportError:  # no IPython: never a notebook
        return auto_tqdm
    if not issubclass(auto_tqdm, tqdm_notebook):
        return auto_tqdm
    from IPython.display import display

    class NotebookBar(auto_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["display"] = False  # drawn below, under a display id that close() can replace
            self._handle: Any = None
            super().__init__(*args, **kwargs)
            if not self.disable and self.delay <= 0:
                self._handle = display(self.container, display_id=True)

        def close(self) -> None:
            if self.disable:
                return
            finished = not self.total or self.n >= self.total
            super().close()
            if self._handle is None:
                return
            handle, self._handle = self._handle, None
            if finished and not self.leave:
                handle.update({"text/plain": ""}, raw=True)
                return
            line = self.format_meter(**{**self.format_dict, "bar_format": "{desc}: {n_fmt}/{total_fmt} [{elapsed}]"})
            if not finished:
                line = f"{line} (stopped at {self.n} of {self.total}: interrupted or failed)"
            handle.update({"text/plain": line}, raw=True)

    return NotebookBar
