"""The audit report: one self-contained HTML file.

Everything the page needs is inside it: images are PNGs embedded as base64
``data:`` URIs, the style sheet is inline, and there is no script, font or
any other reference to the network, so the file opens offline in any
browser and can be mailed or archived as it is.

The page has a section per explained class (``id="class-<k>"``); in it, a
verdict line ("no suspicious group" when no group's level is at most
``ALPHA``), then the class's clusters in score order, each an ``<article class="cluster"
id="cluster-<i>">`` (``i``: the cluster's position in
:attr:`keras_cam.Audit.clusters`) with the mean map drawn over the cluster's
representative image, the mean map alone, the cluster's numbers, and up to
16 members with their own maps over them, and the verification when
:meth:`keras_cam.Audit.verify` ran (its numbers, and a member, that member
with the region removed, an other-class image and that image with the
region pasted, with the scores and predictions before and after).
"""

from __future__ import annotations

import html

import numpy as np

from keras_cam.files import png_data_uri
from keras_cam.audit import verify as interventions

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 16px 24px; color: #1d2125; background: #fafafa; }
h1 { font-size: 22px; margin: 8px 0; } h2 { font-size: 18px; margin: 28px 0 6px; border-bottom: 2px solid #ccd; }
h3 { font-size: 15px; margin: 0 0 6px; }
.meta, .note, .eig { color: #555; margin: 4px 0; }
.how { background: #eef1f6; border-radius: 6px; padding: 8px 12px; }
nav ul { margin: 4px 0; padding-left: 20px; } nav li { margin: 2px 0; }
.cluster { background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 10px 12px; margin: 10px 0; }
.cluster.first { border: 2px solid #c0392b; }
.row { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
figure { margin: 0; text-align: center; } figcaption { font-size: 12px; color: #555; }
img { image-rendering: pixelated; border-radius: 3px; }
img.mean { width: 192px; height: auto; } img.heat { width: 96px; height: auto; }
table.stats { border-collapse: collapse; } table.stats td { padding: 1px 10px 1px 0; }
table.stats td.v { font-variant-numeric: tabular-nums; text-align: right; }
.score { font-weight: 600; color: #c0392b; }
.members { display: grid; grid-template-columns: repeat(8, 96px); gap: 6px; margin-top: 8px; }
.members img { width: 96px; height: auto; display: block; }
.members figcaption { font-size: 11px; }
.verdict { font-weight: 600; } .verdict.none { color: #2e7d32; } .verdict.found { color: #c0392b; }
.verification { border-top: 1px solid #dde; margin-top: 8px; padding-top: 6px; }
h4 { font-size: 14px; margin: 4px 0; }
"""


def _unit(map_):
    """A nonnegative grid map scaled to [0, 1] by its maximum (zeros stay zeros)."""
    m = np.asarray(map_, np.float32)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


def _over(image, map_, alpha=0.5):
    from keras_cam.viz import overlay

    return overlay(image, _unit(map_), alpha=alpha)


def _heat(map_, side=96):
    from keras_cam.viz import colorize

    return colorize(_unit(map_), size=(side, side))


def _class_name(class_names, k):
    if class_names is not None:
        try:
            return f"{k} ({class_names[int(k)]})"
        except (IndexError, KeyError, TypeError):
            pass
    return str(k)


def _alpha():
    from keras_cam.audit.hotspots import ALPHA

    return ALPHA


def _level(c):
    if c.level is None:
        return "n/a"
    return f"{c.level:.3g}" + (f" (Bonferroni over {len(c.tests)} tests)" if c.tests else "")


def _tests(c):
    """The p-value of each test the level combines, one per line."""
    return "<br>".join(f"{name}: {'n/a' if p is None else f'{p:.2g}'}" for name, p in (c.tests or {}).items()) or "n/a"


def _pct(value):
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def render(result, class_names=None, title=None):
    """The report of an :class:`~keras_cam.Audit` as an HTML string (see the module docstring)."""
    esc = html.escape
    title = title or f"keras-cam audit: {result.method} on {result.model}"
    n = len(result.targets)
    classes = sorted({c.target for c in result.clusters})
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{n} images, {len(classes)} classes, {len(result.clusters)} clusters; maps: '
        f"{esc(result.method)} at layer {esc(result.layer)}, reduced to a {result.maps.shape[1]} x "
        f"{result.maps.shape[2]} grid.</p>",
        '<p class="how">Within each class, the first group holds the images that share evidence the rest '
        "of the class lacks: a <b>place</b> in their maps (\"where\": a spot fixed in place, against a null "
        "that moves each map onto another's centre) or a <b>feature</b> at the explained layer (\"what\": a "
        "channel on which a part of the class is split off, against a uniform null), whichever is more "
        "significant. Where the audit had the images, it also verified the candidate groups by "
        "intervention (the \"what\" group, and the \"where\" group when boxes or masks were given), and "
        "the first group is the candidate of the strongest test. Its <b>level</b> is the Bonferroni level "
        "over the statistics and these verifications (each test's p-value is listed): a level at most "
        f"{_alpha():.2f} marks a <b>suspicious group</b>. A verification removes the group's region from "
        "members and pastes it into other classes' images, against random places of the same size (with "
        "the objects' boxes or masks: places that cover as much of each member's object; for a "
        "group that differs everywhere alike, such as a colour cast: its per-channel colour offset, "
        "against random offsets of the same size).</p>",
        "<nav><ul>",
    ]
    for k in classes:
        members = [i for i, c in enumerate(result.clusters) if c.target == k]
        links = ", ".join(f'<a href="#cluster-{i}">{result.clusters[i].score:.2f}</a>' for i in members)
        parts.append(f'<li><a href="#class-{k}">class {esc(_class_name(class_names, k))}</a>: '
                     f"{sum(result.clusters[i].size for i in members)} images, scores {links}</li>")
    parts.append("</ul></nav>")
    for k in classes:
        members = [i for i, c in enumerate(result.clusters) if c.target == k]
        name = esc(_class_name(class_names, k))
        parts.append(f'<section class="class" id="class-{k}">')
        parts.append(f"<h2>Class {name}: {sum(result.clusters[i].size for i in members)} images, "
                     f"{len(members)} cluster(s)</h2>")
        eig = result.eigenvalues.get(k)
        if eig is not None and len(eig):
            parts.append(f'<p class="eig">Smallest Laplacian eigenvalues: '
                         f"{', '.join(f'{v:.3f}' for v in eig)}</p>")
        if result.notes.get(k):
            parts.append(f'<p class="note">{esc(result.notes[k])}</p>')
        if not any(result.clusters[i].suspicious for i in members):
            parts.append(f'<p class="verdict none">No suspicious group in class {name}: no group\'s level is '
                         f"at most {_alpha():.2f}.</p>")
        else:
            parts.append(f'<p class="verdict found">Suspicious group in class {name}.</p>')
        for rank, i in enumerate(members):
            parts.append(_cluster_html(result, i, rank, name, class_names))
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _cluster_html(result, i, rank, name, class_names=None):
    c = result.clusters[i]
    rep = result.thumbnails[c.representative]
    rows = [("size", f"{c.size} ({100.0 * c.size / len(result.targets):.1f}% of all images)"),
            ("score", f'<span class="score">{c.score:.3f}</span>'), ("level", _level(c)), ("tests (p)", _tests(c)),
            ("suspicious", "yes" if c.suspicious else "no"),
            ("evidence", "n/a" if c.evidence is None else (
                "where (a place in the maps)" if c.evidence == "where"
                else f"what (channel {c.channel} of the layer, its {c.pooling or 'mean'} over positions)")),
            ("energy in hotspot", _pct(c.shared_energy)),
            ("consistency", f"{c.consistency:.3f}"), ("distance", f"{c.distance:.3f}"),
            ("separation", f"{c.separation:.3f}"), ("accuracy", _pct(c.accuracy)),
            ("outside energy", _pct(c.outside_energy))]
    stats = "".join(f"<tr><td>{k}</td><td class=\"v\">{v}</td></tr>" for k, v in rows)
    out = [
        f'<article class="cluster{" first" if rank == 0 else ""}" id="cluster-{i}" data-target="{c.target}" '
        f'data-size="{c.size}" data-score="{c.score:.6f}">',
        f"<h3>Class {name}, cluster {rank + 1}: score {c.score:.3f}, {c.size} images</h3>",
        '<div class="row">',
        f'<figure><img class="mean" src="{png_data_uri(_over(rep, c.mean_map))}" '
        f'alt="mean map of cluster {i} over image {c.representative}">'
        f"<figcaption>mean map over image {c.representative}</figcaption></figure>",
        f'<figure><img class="heat" src="{png_data_uri(_heat(c.mean_map))}" alt="mean map of cluster {i}">'
        f"<figcaption>mean map</figcaption></figure>",
        f'<table class="stats">{stats}</table>',
        "</div>",
        '<div class="members">',
    ]
    maps = result.maps
    for j in c.examples:
        j = int(j)
        out.append(f'<figure><img class="thumb" src="{png_data_uri(_over(result.thumbnails[j], maps[j]))}" '
                   f'alt="image {j} with its map" title="image {j}"><figcaption>#{j}</figcaption></figure>')
    out.append("</div>")
    if i in result.verifications:
        out.append(_verification_html(result.verifications[i]))
    if i in getattr(result, "concept_summaries", {}):
        from keras_cam.concepts.audit import summary_html

        out.append(summary_html(result, result.concept_summaries[i], class_names))
    out.append("</article>")
    return "\n".join(out)


def _verification_html(v):
    """The numbers of a verification and its before/after pictures."""
    esc = html.escape
    r, t = v.removal, v.transplant
    e = v.example
    # An image-wide verification moves the channel means (an offset), not a region (see verify.py).
    what, rand = ("region", "random places") if v.offset is None else ("channel-mean offset", "random offsets")
    if v.matched:
        rand = "random places on as much of the object"
    rows = [
        (f"removal: score drop, {what}", f"{r.region:.3f}"), (f"removal: score drop, {rand}", f"{r.random:.3f}"),
        ("removal effect (95% CI)", f"{r.mean:.3f} [{r.low:.3f}, {r.high:.3f}] over {r.n} members"),
        (f"transplant: score rise, {what}", f"{t.region:.3f}"),
        (f"transplant: score rise, {rand}", f"{t.random:.3f}"),
        ("transplant effect (95% CI)", f"{t.mean:.3f} [{t.low:.3f}, {t.high:.3f}] over {t.n} images"),
        ("predictions moved to the class", f"{_pct(t.flips_region)} ({rand} {_pct(t.flips_random)})"),
    ]
    if v.object_drop is not None:
        rows.append(("removal of the object: score drop", f"{v.object_drop:.3f}"))
    if v.distinct is not None:
        rows.append(("members' median from the rest's, in standard deviations of other images' colour "
                     f"along the offset (needs {interventions.MIN_DISTINCT:g})", f"{v.distinct:.2f}"))
    if v.stands_out is not None:
        rows.append(("the members' pixels stand out from other images' in the region (needed)",
                     "yes" if v.stands_out else "no"))
    stats = "".join(f"<tr><td>{k}</td><td class=\"v\">{val}</td></tr>" for k, val in rows)
    pictures = ""
    if e.get("images"):
        captions = (f"member #{e['member']}: score {e['member_score']:.2f}",
                    f"{what} removed: {e['removed_score']:.2f}",
                    f"other #{e['other']}: score {e['other_score']:.2f}, predicted {e['other_prediction']}",
                    f"{what} {'pasted' if v.offset is None else 'added'}: {e['pasted_score']:.2f}, "
                    f"predicted {e['pasted_prediction']}")
        pictures = '<div class="row">' + "".join(
            f'<figure><img class="heat" src="{png_data_uri(im)}" alt="{esc(cap)}"><figcaption>{esc(cap)}'
            f"</figcaption></figure>" for im, cap in zip(e["images"], captions)) + "</div>"
    return (f'<div class="verification" data-depends="{str(v.depends).lower()}"><h4>Verification: '
            f"{esc(v.verdict)}</h4>{pictures}<table class=\"stats\">{stats}</table>"
            f'<p class="note">Threshold: {esc(interventions.threshold(v.spread))} (the verdict\'s p-value: '
            f'{v.level:.2g}); seed {v.seed}.'
            f'{_unmatched(v)}{_not_distinct(v)}</p></div>')


def _not_distinct(v):
    """Why a verification says "no dependence shown" whatever its effects."""
    if v.stands_out is False:
        return (" No pixel of the region stands out in the members against other classes' images: the "
                "group was chosen because its maps point there, so its members depend on it by "
                "construction; with no content they share, no dependence is called.")
    if v.distinct is None or v.distinct >= interventions.MIN_DISTINCT:
        return ""
    return (f" The group's typical member lies {v.distinct:.2f} standard deviations of how other images vary "
            f"along its colour offset from the rest, under {interventions.MIN_DISTINCT:g}: a split of the class "
            f"along a feature every image has (such as brightness), not a feature the group shares, so no "
            f"dependence is called.")


def _unmatched(v):
    """The caveat of a region verified against random places anywhere (no boxes or masks given)."""
    if v.offset is not None or v.matched:
        return ""
    return (" Random places anywhere (the audit had no boxes or masks): a region on the members' objects "
            "shows a dependence too; audit with boxes= or masks= to compare with places on the object.")
