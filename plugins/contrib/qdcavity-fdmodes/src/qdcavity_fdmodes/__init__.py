"""qdcavity-fdmodes: a finite-difference 1D eigenmode backend for qdcavity's ``modes`` analysis.

``qdcavity_fdmodes.solver`` is the numerical core (numpy/scipy only, usable without qdcavity);
``qdcavity_fdmodes.plugin`` is the qdcavity backend, registered through the ``qdcavity``
entry-point group as ``fdmodes``.
"""

__version__ = "0.1.0"
