# The spread of several `seckill-loadtest bench` runs (input: {runs, commit,
# phases, rows: [bench.json, ...]}), and the SPEC §7 targets judged on the
# median of the runs. Ratios use each run's ceiling (`healthz_rps`: the
# faster of its two `/healthz` phases). Used by scripts/bench.sh.
def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def spread: {min: min, median: median, max: max, values: .};
# ">= 0.85" / "<= 5 at 64 connections": the comparison and its bound.
def judge($v): (.target | capture("^(?<op>[<>]=) *(?<bound>[0-9.]+)")) as $t
  | ($t.bound | tonumber) as $b
  | if $t.op == ">=" then $v >= $b else $v <= $b end;
. as $in
| {
    runs: $in.runs,
    commit: $in.commit,
    phases: [
      $in.phases[] as $name
      | [$in.rows[] | . as $row | (.phases[] | select(.name == $name)) as $p
         | $row.healthz_rps as $h
         | {rps: $p.rps, ratio: ($p.rps / $h), p99_ms: $p.p99_ms,
            cpu_us: (($p.cpu.client_us_per_request // 0) + ($p.cpu.engine_us_per_request // 0)
                     + ($p.cpu.redis_us_per_request // 0) + ($p.cpu.postgres_us_per_request // 0))}]
      | {name: $name,
         rps: ([.[].rps] | spread), ratio: ([.[].ratio] | spread),
         p99_ms: ([.[].p99_ms] | spread), cpu_us: ([.[].cpu_us] | spread)}
    ],
    targets: [
      $in.rows[0].targets[] as $t
      | [$in.rows[] | .targets[] | select(.name == $t.name) | .value] as $values
      | ($values | median) as $m
      | {name: $t.name, target: $t.target, values: $values, median: $m, met: ($t | judge($m))}
    ]
  }
| .all_met = all(.targets[]; .met)
