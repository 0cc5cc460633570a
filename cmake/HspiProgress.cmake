# Build-time progress line: pip runs the build with its output captured (shown only with -v),
# so the line goes to the user's terminal when there is one, and to the build log always.
# Usage: cmake -DMSG="..." -P HspiProgress.cmake
if(EXISTS /dev/tty)
  execute_process(COMMAND sh -c "printf '%s\\n' \"$0\" > /dev/tty" "${MSG}" ERROR_QUIET OUTPUT_QUIET)
endif()
message(STATUS "${MSG}")
