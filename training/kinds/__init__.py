"""Trainers per kind of model, for the user's own data under the user's own name.

    python -m training image   --name NAME --data DIR
    python -m training text    --name NAME --data FILE --text-column C --label-column L
    python -m training tabular --name NAME --data FILE --target T [--features ...]

Each module reads top to bottom (data, model, train, evaluate) and gives a
TrainingResult that training/publish.py exports into a new registry version. The
shipped models are named recipes of these kinds (service/core/catalog.py lists their trainers).
"""

TRAINERS = {"image": "training.kinds.image", "text": "training.kinds.text", "tabular": "training.kinds.tabular"}
