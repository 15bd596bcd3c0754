"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: blocks of 32, regrouped by 8 blocks (grouped.py), Q4_0,
Q4_1 and Q8_0 also interleaved by tiles of 16 rows (tiles.py); row dots in rows.py."""
