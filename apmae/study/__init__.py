"""The study: the paper's claims on a real model and real Java, at a size where the answers resolve.

- :mod:`apmae.study.run`: ``make study``, the nine recorded stages, from the pilot to the claims report;
- :mod:`apmae.study.corpus`: which Java corpus the study reads (a given one, the JDK's ``lib/src.zip``,
  or the Debian ``openjdk-17-source`` package fetched into the study's folder) and its identity;
- :mod:`apmae.study.plan`: the study's settings and the per-task counts its pilot decides;
- :mod:`apmae.study.stages`: stage records, reuse on rerun, time across kills;
- :mod:`apmae.study.interventions`: heads zeroed by a held-out ranking against random sets;
- :mod:`apmae.study.claims`: the claims report, each verdict by a written rule.
"""
