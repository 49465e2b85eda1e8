"""tokenflow's built-in stages. Each module is a plugin listed in the ``tokenflow`` entry-point
group and uses only tokenflow's public API, exactly as a third-party plugin would."""
