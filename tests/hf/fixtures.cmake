# Writes the reference checkpoints of tests/hf (run by the hf.reference_fixtures test):
#   cmake -DPYTHON=/usr/bin/python3 -DSCRIPT=hf_reference.py -DOUT=dir -P fixtures.cmake
if(NOT PYTHON OR NOT EXISTS "${PYTHON}")
  message(FATAL_ERROR "hf fixtures: Debian's /usr/bin/python3 with torch (python3-torch) is needed: scripts/setup.sh installs it")
endif()
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
# name | arguments of `hf_reference.py write`
# (vocabularies of 320 ids: the trainer's byte tokenizer, used for pre-tokenized data, needs 262)
set(fixtures
  "llama_f32|--arch llama --dtype float32 --vocab 320"
  "llama_bf16_tied|--arch llama --dtype bfloat16 --tied --vocab 320"
  "qwen2_bf16_sharded|--arch qwen2 --dtype bfloat16 --shards 3 --vocab 320"
  "qwen2_f16|--arch qwen2 --dtype float16 --vocab 320"
  "qwen3_f32_sharded_tied|--arch qwen3 --dtype float32 --shards 2 --tied --vocab 320"
  "qwen3_bf16|--arch qwen3 --dtype bfloat16 --vocab 320"
  "qwen3_moe_bf16_sharded|--arch qwen3_moe --dtype bfloat16 --shards 2 --vocab 320"
  "qwen3_moe_f32_tied|--arch qwen3_moe --dtype float32 --tied --no-norm-topk-prob --vocab 320"
  "big_qwen2|--arch qwen2 --dtype bfloat16 --shards 2 --vocab 8192 --hidden 512 --intermediate 1536 --layers 4 --heads 8 --kv-heads 2")
foreach(f IN LISTS fixtures)
  string(REPLACE "|" ";" parts "${f}")
  list(GET parts 0 name)
  list(GET parts 1 args)
  separate_arguments(args UNIX_COMMAND "${args}")
  execute_process(COMMAND ${PYTHON} ${SCRIPT} write ${OUT}/${name} ${args} --seed 7
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "hf fixtures: writing ${name} failed: ${err}")
  endif()
  # the reference's per-token losses of fixed token sequences (the C++ side trains on the same ids)
  execute_process(COMMAND ${PYTHON} ${SCRIPT} loss ${OUT}/${name} --tokens ${CMAKE_CURRENT_LIST_DIR}/tokens.json
                          --out ${OUT}/${name}.loss.json
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "hf fixtures: the losses of ${name} failed: ${err}")
  endif()
endforeach()
