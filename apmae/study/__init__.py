"""The study: the paper's claims on a real model and real Java, at a size where the answers resolve.

- :mod:`apmae.study.corpus`: which Java corpus the study reads (a given one, the JDK's ``lib/src.zip``,
  or the Debian ``openjdk-17-source`` package fetched into the study's folder) and its identity.
"""
