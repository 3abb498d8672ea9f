"""Chapter 19's ticket router: three queues, a fine-tuned MiniLM, calibrated confidence and a human-triage threshold.

The queues are the 3-class Rotten Tomatoes corpus (:func:`behind_pipeline.data.load_rotten_tomatoes_3class`):
*rotten* and *fresh* reviews and *plot* summaries. The router starts from the course classifier (its body already
learned fresh against rotten on the same train movies) with a 3-row head whose *rotten* and *fresh* rows are the
course head's, and is fine-tuned with the book's one training loop. ``python -m behind_pipeline.capstone``
trains it once and saves it with ``save_pretrained`` under ``.cache/models/minilm-ticket-router``, and beside it
its class-weighted twin, which the chapter compares with it; the command does nothing while the recipe, the
training items, the course classifier and the library versions are unchanged (:mod:`behind_pipeline.trained_once`).
``BTP_SERVICE_MODEL=.cache/models/minilm-ticket-router make serve`` serves it with chapter 18's app.

Triage: an item goes to its predicted queue when the router's (calibrated) confidence is at least a threshold,
and to a human otherwise. *Coverage* is the share routed automatically, *precision* the share of those routed to
the right queue. ``triage_curve`` gives both for every threshold; ``threshold_for_precision_bound`` picks the
lowest threshold whose one-sided Wilson lower bound of validation precision reaches a target
(``threshold_for_precision``, the measured precision reaching it, leaves no margin). ``write_triage`` saves the
temperature, the threshold and the 128-token window beside the weights (``triage.json``, and the tokenizer's
``model_max_length``); the service reads them at load and answers each text with its route, a queue or "to a
person", and the calibrated confidence. ``drift_monitor`` summarises a stream of routed items.

The model card (``book/model_card_capstone.md``) is rendered from the results file by ``render_model_card``
(``python -m behind_pipeline.capstone --card``, ``--card --check``); the golden files under ``tests/golden/`` are
written by ``golden_record`` (``python -m behind_pipeline.capstone --refresh-golden``).

One module per concern, each importing only the ones listed before it (import every name from its module):

- ``router``: the recipe (``RouterRecipe``, ``PREPARED``, ``MAX_LENGTH``), the head transfer (``router_from``), the
  fingerprint, training once (``train_router``, ``router_dir``) and the class-weighted twin.
- ``triage``: per-queue F1, the triage curve, the two threshold rules, Wilson intervals, routes, the drift monitor,
  the triage settings saved beside the weights (``read_triage``, ``write_triage``), and ``ensure_router``: the
  router trained once with current triage settings, which needs both this module and ``router``.
- ``golden``: the golden files' fixed inputs, records and differences, the tiny router the golden test trains,
  the served routes' golden file, and ``refresh_golden``.
- ``card``: the results file of chapter 19 and the model card rendered from it.
- ``__main__``: the command line (``python -m behind_pipeline.capstone``, ``--card``, ``--check``,
  ``--refresh-golden``).
"""
