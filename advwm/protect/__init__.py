"""The person's path: protect photos with what a run crafted (`python -m advwm.protect`).

`cli` is the command (plan the photos, refuse collisions, write each protected copy); `faces` finds faces and
frames them as the victims saw faces in training.
"""
