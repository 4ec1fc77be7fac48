"""The shared figure conventions: atomic PNGs at one DPI, colours, spreads, empty panels."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from scvae.plotting.style import DPI, empty_panel, offsets, palette, save_figure


@pytest.mark.parametrize(("tight", "shape"), [(False, (2 * DPI, 3 * DPI)), (True, None)])
def test_save_figure_writes_a_png_at_the_dpi_and_no_temporary_file(tmp_path, tight, shape):
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1], [0, 1])
    path = tmp_path / "fig.png"
    save_figure(fig, path, tight=tight)
    image = mpimg.imread(path)
    if shape is not None:
        assert image.shape[:2] == shape  # the figure size in inches times the DPI
    else:
        assert image.shape[0] < 2 * DPI and image.shape[1] < 3 * DPI  # cropped
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


@pytest.mark.parametrize("n", [1, 10, 11, 20, 21, 40])
def test_palette_gives_n_distinct_colours(n):
    colours = palette(n)
    assert len(colours) == n
    assert len({to_hex(c) for c in colours}) == n


def test_offsets_are_centred_and_span_the_width():
    assert offsets(1).tolist() == [0.0]
    spread = offsets(5, width=0.4)
    assert spread[0] == pytest.approx(-0.2) and spread[-1] == pytest.approx(0.2)
    assert np.allclose(np.diff(spread), 0.1)


def test_empty_panel_writes_the_message_and_clears_the_ticks():
    ax = Figure().subplots()
    empty_panel(ax, "nothing here")
    assert [t.get_text() for t in ax.texts] == ["nothing here"]
    assert to_hex(ax.texts[0].get_color()) == to_hex("0.4")
    assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
