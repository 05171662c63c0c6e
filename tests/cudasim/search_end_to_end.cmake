# The main job end to end on the simulated GPU: tnas-search (built against the simulator) on the
# first images of Fashion-MNIST, once with --device cpu and once with --device cuda, then the
# CUDA run again with --resume. ARGS adds the variant's flags (--device-graph, --strategy bats)
# and its --search-samples.
#
#   cmake -DEXE=tnas-search-cudasim -DIDX_HEAD=idx_head.sh -DDATA=<fashion-mnist dir>
#         -DWORK=<scratch dir> -DCOMPARE=ON|OFF -DARGS="--search-samples 64 ..."
#         -P search_end_to_end.cmake
#
# COMPARE=ON: the two devices must find the same genotype and give the same test and supernet
# accuracies, and the same test loss and search training loss (1e-4 relative). For the binary
# space (COMPARE=OFF) they need not: an activation within a float rounding of 0 takes a
# different sign on the other device and changes a binary network's path (one BATS supernet
# step, C=4, batch 16, six seeds: the loss agreed to 1e-7 for three and differed by 2e-4 to
# 7e-4 for the others), so both runs are only checked to end with a fully binary network.
# The resumed run loads the finished run's checkpoints onto the device and must give its test
# loss and accuracy exactly (the same weights evaluated on the same images).
cmake_minimum_required(VERSION 3.19)  # string(JSON)

foreach(v EXE IDX_HEAD DATA WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "search_end_to_end.cmake: -D${v}=... is missing")
  endif()
endforeach()
separate_arguments(_extra UNIX_COMMAND "${ARGS}")

file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND sh "${IDX_HEAD}" "${DATA}" "${WORK}/data" 600 300
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "idx_head.sh could not write the small data set (${rc})")
endif()

# A budget-free plan small enough for the simulator: one search epoch of batches of 16 (ARGS
# gives --search-samples), one retraining epoch of 4 steps, the 300 test images.
set(_job --data "${WORK}/data" --budget-minutes 0 --epochs 1 --train-epochs 1 --channels 4
    --cells 2 --batch 16 --train-channels 4 --train-cells 2 --train-batch 32
    --train-steps-per-epoch 4 --seed 3)

# run(NAME args...): the job with its output in ${WORK}/NAME; sets NAME_json to its result,
# NAME_search_json to the search's last epoch and NAME_err to its progress output (stderr).
function(run name)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND "${EXE}" ${_job} ${ARGN} --out "${WORK}/${name}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(TIMESTAMP t1 "%s")
  math(EXPR dt "${t1} - ${t0}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "tnas-search ${ARGN} failed (${rc}):\n${err}")
  endif()
  file(READ "${WORK}/${name}/result.json" json)
  string(JSON acc GET "${json}" test_accuracy)
  string(JSON loss GET "${json}" test_loss)
  message(STATUS "${name} (${ARGN}): test accuracy ${acc}, loss ${loss} (${dt} s)")
  set(${name}_json "${json}" PARENT_SCOPE)
  # The search's last epoch (search/alphas.jsonl: losses, accuracies, alphas).
  file(STRINGS "${WORK}/${name}/search/alphas.jsonl" epochs)
  list(GET epochs -1 last)
  set(${name}_search_json "${last}" PARENT_SCOPE)
  set(${name}_err "${err}" PARENT_SCOPE)
endfunction()

# same(A B KEY TOL): the field KEY of the JSON objects A_json and B_json, equal within relative
# tolerance TOL (exactly where TOL is 0; strings compare exactly).
function(same a b key tol)
  string(JSON va GET "${${a}_json}" ${key})
  string(JSON vb GET "${${b}_json}" ${key})
  string(JSON kind TYPE "${${a}_json}" ${key})
  if(kind STREQUAL "NUMBER" AND NOT tol EQUAL 0)
    # CMake has no floating point: the check runs in a shell awk (POSIX), exit status 1 if apart.
    execute_process(COMMAND awk "BEGIN { d = (${va}) - (${vb}); if (d < 0) d = -d;
                                 m = (${va}) < 0 ? -(${va}) : (${va}); exit !(d <= ${tol} * m) }"
                    RESULT_VARIABLE differ)
  else()
    string(COMPARE NOTEQUAL "${va}" "${vb}" differ)
  endif()
  if(differ)
    message(FATAL_ERROR "${key}: ${a} gave ${va}, ${b} gave ${vb} (tolerance ${tol})")
  endif()
endfunction()

run(cpu --device cpu ${_extra})
run(cuda --device cuda ${_extra})
if(COMPARE)
  same(cpu cuda genotype 0)
  same(cpu cuda test_accuracy 0)
  same(cpu cuda test_loss 1e-4)
  same(cpu cuda supernet_valid_accuracy 0)
  same(cpu_search cuda_search train_loss 1e-4)  # the supernet's training loss in the search
else()
  string(JSON cpu_layers ERROR_VARIABLE e1 GET "${cpu_json}" binary binary_layers)
  string(JSON cuda_layers ERROR_VARIABLE e2 GET "${cuda_json}" binary binary_layers)
  if(e1 OR e2 OR NOT cpu_layers GREATER 0 OR NOT cuda_layers GREATER 0)
    message(FATAL_ERROR "no binary layers in a result: cpu ${cpu_layers}, cuda ${cuda_layers}")
  endif()
endif()

file(COPY "${WORK}/cuda/" DESTINATION "${WORK}/resumed")
run(resumed --device cuda ${_extra} --resume)
if(NOT resumed_err MATCHES "resumed from")
  message(FATAL_ERROR "the --resume run did not resume:\n${resumed_err}")
endif()
same(cuda resumed test_accuracy 0)
same(cuda resumed test_loss 0)
same(cuda resumed genotype 0)
