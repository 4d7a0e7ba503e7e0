# Building ament_cmake/rosidl packages against ROS 2 installed from PyPI wheels (ros-* packages in a
# Python virtual environment), without a system ROS install.
#
# Under an apt or source install of ROS 2 both macros below do nothing, so a normal workspace build
# (`colcon build` after sourcing /opt/ros/<distro>/setup.bash) is unaffected.
#
#   include(ros_setup/cmake/pypi_ros.cmake)
#   pypi_ros_setup()                        # before find_package(ament_cmake)
#   ...
#   rosidl_generate_interfaces(...)
#   pypi_ros_fix_python_include_dirs()      # after every find_package of a message package
#
# Facts behind it (see shared ROS_ENV.md): the wheels install ament_cmake and every package's CMake
# config under <venv>/share, which CMake and ament only search when the venv prefix is on
# CMAKE_PREFIX_PATH and AMENT_PREFIX_PATH; and the message wheels' exported rosidl_generator_py
# targets name the wheel builder's Python and numpy include directories
# (/opt/python/cpXY-cpXY/...), which do not exist here and make CMake's generate step fail.

# Detects a PyPI-wheel ROS 2 in the prefix of the Python interpreter that the build uses and puts
# that prefix on CMAKE_PREFIX_PATH and ENV{AMENT_PREFIX_PATH}. Sets PYPI_ROS_PREFIX (empty when
# no such install is found).
macro(pypi_ros_setup)
  set(PYPI_ROS_PREFIX "")
  if(NOT Python3_EXECUTABLE)
    find_package(Python3 QUIET COMPONENTS Interpreter)
  endif()
  if(Python3_EXECUTABLE)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c "import sys; print(sys.prefix)"
      OUTPUT_VARIABLE _pypi_ros_prefix
      OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE _pypi_ros_rc)
    if(_pypi_ros_rc EQUAL 0 AND EXISTS "${_pypi_ros_prefix}/share/ament_cmake/cmake")
      set(PYPI_ROS_PREFIX "${_pypi_ros_prefix}")
      if(NOT "${PYPI_ROS_PREFIX}" IN_LIST CMAKE_PREFIX_PATH)
        list(APPEND CMAKE_PREFIX_PATH "${PYPI_ROS_PREFIX}")
      endif()
      if("$ENV{AMENT_PREFIX_PATH}" STREQUAL "")
        set(ENV{AMENT_PREFIX_PATH} "${PYPI_ROS_PREFIX}")
      else()
        string(REPLACE ":" ";" _pypi_ros_ament "$ENV{AMENT_PREFIX_PATH}")
        if(NOT "${PYPI_ROS_PREFIX}" IN_LIST _pypi_ros_ament)
          set(ENV{AMENT_PREFIX_PATH} "$ENV{AMENT_PREFIX_PATH}:${PYPI_ROS_PREFIX}")
        endif()
      endif()
      message(STATUS "Building against ROS 2 from PyPI wheels in ${PYPI_ROS_PREFIX}")
    endif()
  endif()
endmacro()

# Rewrites the wheel builder's /opt/python/cpXY-cpXY/... include directories on the imported targets
# of this directory to the include directories of the Python and numpy used by this build.
function(pypi_ros_fix_python_include_dirs)
  if(NOT PYPI_ROS_PREFIX)
    return()
  endif()
  if(CMAKE_VERSION VERSION_LESS 3.21)
    message(FATAL_ERROR
      "Building against ROS 2 from PyPI wheels needs CMake >= 3.21 (found ${CMAKE_VERSION})")
  endif()
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
      "import sysconfig, numpy; print(sysconfig.get_paths()['include']); print(numpy.get_include())"
    OUTPUT_VARIABLE _out
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${Python3_EXECUTABLE} cannot report its include directory and numpy's")
  endif()
  string(REPLACE "\n" ";" _out "${_out}")
  list(GET _out 0 _py_include)
  list(GET _out 1 _np_include)
  if(NOT EXISTS "${_py_include}/Python.h")
    message(FATAL_ERROR
      "Python.h not found in ${_py_include}: install the Python development headers "
      "(Debian: python3-dev) for ${Python3_EXECUTABLE}")
  endif()
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  set(_fixed 0)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs OR NOT "${_dirs}" MATCHES "/opt/python/cp[0-9]+-cp[0-9]+")
      continue()
    endif()
    set(_new_dirs "")
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^/opt/python/cp[0-9]+-cp[0-9]+/.*/numpy/.*include$")
        list(APPEND _new_dirs "${_np_include}")
      elseif(_dir MATCHES "^/opt/python/cp[0-9]+-cp[0-9]+/include")
        list(APPEND _new_dirs "${_py_include}")
      else()
        list(APPEND _new_dirs "${_dir}")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES _new_dirs)
    set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
    math(EXPR _fixed "${_fixed} + 1")
  endforeach()
  message(STATUS "Rewrote the Python/numpy include directories of ${_fixed} imported targets")

  # A venv inside the source tree (<repo>/.venv) puts numpy's include directory, which
  # rosidl_generator_py adds as a PUBLIC include directory of <pkg>__rosidl_generator_py, under the
  # source directory, and install(EXPORT) refuses such paths ("... which is prefixed in the source
  # directory"). Keep them for this build only; consumers get numpy's headers from their own
  # find_package(Python3 ... NumPy).
  string(FIND "${PYPI_ROS_PREFIX}/" "${CMAKE_SOURCE_DIR}/" _in_source)
  if(NOT _in_source EQUAL 0)
    return()
  endif()
  get_property(_own_targets DIRECTORY PROPERTY BUILDSYSTEM_TARGETS)
  foreach(_target IN LISTS _own_targets)
    get_target_property(_type ${_target} TYPE)
    if(_type STREQUAL "INTERFACE_LIBRARY" OR _type STREQUAL "UTILITY")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      string(FIND "${_dir}" "${PYPI_ROS_PREFIX}/" _pos)
      if(_pos EQUAL 0)
        list(APPEND _new_dirs "$<BUILD_INTERFACE:${_dir}>")
        set(_changed TRUE)
      else()
        list(APPEND _new_dirs "${_dir}")
      endif()
    endforeach()
    if(_changed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
    endif()
  endforeach()
endfunction()
