# Recall-QPS curves of bench_ivf_search, as ann-benchmarks draws them:
# recall@10 on x, queries per second on a log-scale y, one curve per index;
# left panel one query per call, right panel batches of 1,000 queries.
#
#   gnuplot -e "datafile='out/clustered.dat'; outfile='docs/img/ivf-recall-qps-clustered.png'; \
#               plottitle='clustered (1M x 128, L2)'" benchmarks/plot_recall_qps.gp
#
# The data file holds one block per index (separated by two blank lines),
# each starting with a header line whose first column is the index's name,
# then rows: recall qps_single qps_batched param.

if (!exists("datafile")) datafile = 'clustered.dat'
if (!exists("outfile")) outfile = 'ivf-recall-qps.png'
if (!exists("plottitle")) plottitle = ''

stats datafile using 1 nooutput
blocks = STATS_blocks

set terminal pngcairo size 1400,560 enhanced font 'DejaVu Sans,11'
set output outfile
set datafile missing 'nan'

set logscale y
set format y '10^{%L}'
set grid xtics ytics mytics lw 0.5 lc rgb '#dddddd'
set key bottom left box opaque
set xlabel 'recall@10' noenhanced
set ylabel 'queries per second (log scale)'
set xrange [:1.0]
set style line 1 lc rgb '#1f77b4' lw 2 pt 7 ps 1.0
set style line 2 lc rgb '#2ca02c' lw 2 pt 5 ps 1.0
set style line 3 lc rgb '#d62728' lw 2 pt 9 ps 1.2
set style line 4 lc rgb '#9467bd' lw 2 pt 13 ps 1.2
set style line 5 lc rgb '#ff7f0e' lw 2 pt 11 ps 1.2

set multiplot layout 1,2 title plottitle font ',13' noenhanced
set title 'one query per call'
plot for [i=0:blocks-1] datafile index i using 1:2 with linespoints ls (i+1) title columnheader(1)
set title 'batches of 1,000 queries'
plot for [i=0:blocks-1] datafile index i using 1:3 with linespoints ls (i+1) title columnheader(1)
unset multiplot
