"""Sphinx extension of the book's website: pages that load nothing they do not use.

Jupyter Book always loads sphinx-thebe (live code cells from a Binder server). The book keeps it off
(``launch_buttons.thebe: false``), yet sphinx-thebe still adds its configuration script to every page, and adds it
twice (its ``env-before-read-docs`` handler runs on each reading pass): the second copy throws
``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` in the browser's console, and the script holds
the URL of a script on a CDN. With thebe off, this extension drops sphinx-thebe's scripts from every page.
"""


def _is_thebe(script) -> bool:
    filename = str(getattr(script, "filename", script) or "")
    body = str(getattr(script, "attributes", {}).get("body", ""))
    return "thebe" in filename.lower() or "THEBE_JS_URL" in body


def drop_thebe_scripts(app, pagename, templatename, context, doctree):
    if app.config.thebe_config.get("always_load"):
        return
    if "script_files" in context:
        context["script_files"] = [script for script in context["script_files"] if not _is_thebe(script)]


def setup(app):
    app.connect("html-page-context", drop_thebe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
