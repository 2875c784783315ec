# The slow log of scripts/bench-bigsale.sh, judged. jq -n with
#   --slurpfile slow   the watcher's entries ({id, t, us, cmd, args, client, after_us, seen_us};
#                      {lost: n, ...} where a read did not reach back to the last entry seen)
#   --slurpfile stalls_in  a file holding [{at_us, cpu, late_us}]: the stall probes' late wakeups
#   --argjson phases   {fill_start, fill_end, measure_start, measure_end} (µs)
#   --argjson names    {sha: script name}
#   --argjson bound    µs
#
# A command's slow-log time is wall time between its start and its end on
# Redis's thread. When the machine stops that thread (the hypervisor runs
# something else on its vCPU: a probe pinned to that CPU at a higher
# real-time priority wakes late by as much, at the same instant), the time
# is charged to whatever command was running. Each command over the bound is
# set beside the machine stall that can have fallen inside it: the largest
# total of one CPU's probe stalls (each taken to start late_us + 500 µs
# before its probe woke) that fit in a span of the command's length ending
# within the window it was logged in (a wakeup up to 1 ms after the span's
# end still counts: the probe runs after Redis resumes). Its "own" time is its
# time minus that total (at most its time). Nothing is dropped: every
# command over the bound is listed, with or without a stall, and the raw
# maximum is kept beside the "own" one.
$stalls_in[0] as $stalls |
def kind: if .cmd == "EVALSHA" then "EVALSHA(\($names[.args[0] // ""] // (.args[0] // "")[0:8]))" else .cmd end;
def key: if .cmd == "EVALSHA" then (.args[2] // "") else (.args[0] // "") end;
def phase: .seen_us as $at
  | if $at <= ($phases.fill_start // 0) then "setup"
    elif $at <= ($phases.fill_end // infinite) + 250000 then "fill"
    elif $at <= ($phases.measure_end // infinite) + 250000 then "measure"
    else "after" end;
# Redis runs a script's own commands under the client "?:0": they are inside
# their EVALSHA's time.
# The bench's own redis-cli sends COMMAND DOCS when it connects (its hints);
# like its SLOWLOG and INFO calls, that is not the engine's.
def tooling: .cmd == "COMMAND" and ((.args[0] // "") | ascii_upcase) == "DOCS";
def nested: (.client // "") | startswith("?");
# Earliest and latest instant the command can have ended (µs).
def ended: [([.after_us, .t * 1000000] | max), ([.seen_us, (.t + 1) * 1000000] | min)];
# {cpu, late_us (the total), at_us (the last one's wakeup), count} or null.
def stall: . as $e | ($e | ended) as [$lo, $hi]
  | [$stalls[] | select(.at_us >= $lo - $e.us - 1000 and .at_us <= $hi + 1000)
     | . + {from: (.at_us - .late_us - 500)}]
  | group_by(.cpu)
  | map(. as $cpu_stalls
        # each stall's start as the span's start, kept inside the window
        | [$cpu_stalls[] | ([([.from, $lo - $e.us] | max), $hi - $e.us] | min)] | unique
        | map(. as $x | [$cpu_stalls[] | select(.from >= $x and .at_us <= $x + $e.us + 1000)]
              | select(length > 0)
              | {cpu: .[0].cpu, late_us: (map(.late_us) | add), at_us: (map(.at_us) | max), count: length})
        | max_by(.late_us))
  | map(select(. != null))
  | if length == 0 then null else max_by(.late_us) end;
def stats: {count: length, over_1ms: map(select(.late_us > 1000)) | length,
            over_5ms: map(select(.late_us > 5000)) | length,
            max_us: (map(.late_us) | max // 0)};

[$slow[] | select(.lost == null and (tooling | not) and (phase == "fill" or phase == "measure"))] as $all
| [$all[] | select(nested | not)] as $top
| [$top[] | select(.us > $bound)
   | . + {stall: stall}
   | {phase: phase, t, us, command: kind, key: key, client,
      stall: .stall,
      own_us: (.us - ([(.stall.late_us // 0), .us] | min))}] as $over
| {
    window_ms: (if ($all | length) > 0 then ($all | map(.seen_us - .after_us) | add / length / 1000 | floor) else null end),
    commands_over_100us: ($top | length),
    entries_lost: ([$slow[] | .lost // 0] | add // 0),
    by_kind: ($top | map(. + {kind: kind}) | group_by(.kind)
      | map({kind: .[0].kind, over_100us: length, max_us: (map(.us) | max),
             p99_of_those_us: (map(.us) | sort | .[(length * 0.99 | floor)])})
      | sort_by(-.max_us) | .[0:8]),
    script_commands_over_100us: {count: ([$all[] | select(nested)] | length),
      max_us: ([$all[] | select(nested) | .us] | max // 0)},
    over_bound: ($over | sort_by(-.us)),
    commands_over_bound: ($over | length),
    over_bound_with_a_machine_stall: ([$over[] | select(.stall != null and .own_us <= $bound)] | length),
    own_work_over_bound: ([$over[] | select(.stall == null or .own_us > $bound)] | length),
    slowest: ($top | max_by(.us) // {us: 0} | {us, command: (if .cmd then kind else "none" end), key: key}),
    slowest_own: ([$top[] | select(.us <= $bound) | {us, command: kind, key: key, own_us: .us}] + $over
                  | max_by(.own_us) // {own_us: 0, us: 0, command: "none"}),
    machine_stalls: {
      fill: ([$stalls[] | select(.at_us >= ($phases.fill_start // 0) and .at_us <= ($phases.fill_end // infinite))] | stats),
      measure: ([$stalls[] | select(.at_us >= ($phases.measure_start // infinite) and .at_us <= ($phases.measure_end // 0))] | stats)
    }
  }
